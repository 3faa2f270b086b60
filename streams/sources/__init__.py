"""File sources: expanding ``sources:`` entries into video files, and probing them."""
