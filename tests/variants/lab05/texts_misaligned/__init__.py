"""Lab 05 known-bad variant texts_misaligned: the texts paired with the URLs by position, the texts in the order they arrived."""
