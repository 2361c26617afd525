"""Lab 08 variant sequential_loop: the text's for loop: each page's step awaited before the next one is planned."""
