"""Lab 11 variant qc_not_skipped: the quality check runs for every document, short ones too."""
