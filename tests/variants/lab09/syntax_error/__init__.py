"""Lab 09: a Hatchet 1.x workflow per document (extract -> embed -> classify -> store), graded offline."""
