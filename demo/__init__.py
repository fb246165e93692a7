"""`dreamllm demo`: a Gradio chat app that streams DreamLLM's documents, images drawn in place (extra `demo`)."""
