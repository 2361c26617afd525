"""Lab 05 variant sequential_loop: the text's extraction loop: each page is awaited before the next starts."""
