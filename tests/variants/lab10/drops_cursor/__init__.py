"""Lab 10 variant: continue-as-new without the cursor (BUG(drops_cursor))."""
