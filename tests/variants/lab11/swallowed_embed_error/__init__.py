"""Lab 11 variant swallowed_embed_error: embed_document catches the model's error and returns an empty vector, as the choreographed consumer does."""
