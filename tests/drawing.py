"""Settings that make the tiny random model draw, for pipeline tests."""


def draw_first(pipe, **settings) -> dict:
    """Call settings that make the tiny random model start an image at once (standard `sequence_bias`), plus `settings`."""
    return {"sequence_bias": {(pipe.model.config.dream_start_token_id,): 50.0}, **settings}
