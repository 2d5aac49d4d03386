"""The Gradio editor (``hvae ui``)."""
