"""Test helpers that decide where a tiny pipeline's documents draw: a logits processor forcing a token per row."""

from transformers import LogitsProcessor, LogitsProcessorList


class ForceToken(LogitsProcessor):
    """Makes row r pick `token_id` when it holds exactly `offsets[r]` ids after its prompt (a huge logit bias)."""

    def __init__(self, token_id, offsets_per_row, pad_token_id):
        self.token_id, self.offsets_per_row, self.pad_token_id = token_id, offsets_per_row, pad_token_id
        self.prompt_lengths = None

    def __call__(self, input_ids, scores):
        lengths = (input_ids != self.pad_token_id).sum(1)
        if self.prompt_lengths is None:
            self.prompt_lengths = lengths.clone()
        for row, offsets in enumerate(self.offsets_per_row):
            if int(lengths[row] - self.prompt_lengths[row]) in offsets:
                scores[row, self.token_id] += 1e4
        return scores


def force_dreams(pipe, *offsets_per_row):
    """Logits processors that start an image in row r at each of `offsets_per_row[r]` ids after its prompt."""
    config = pipe.model.config
    return LogitsProcessorList([ForceToken(config.dream_start_token_id, offsets_per_row, config.pad_token_id)])


def image_block_length(pipe):
    """Ids a drawn image adds after its `<dream_start>`: queries, `<dream_end>`, and its image block."""
    config = pipe.model.config
    return config.num_dream_queries + 1 + config.num_image_tokens + 2
