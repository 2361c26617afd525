"""Lab 11 variant no_fallback: the primary's failure is alerted and then fails the workflow; the fallback model is never tried."""
