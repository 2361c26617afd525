"""Lab 09 variant: the student's files only (the course's files are laid over them when graded)."""
