"""Lab 11 variant no_alert: a failed model falls back or fails the workflow, but no pipeline.alert is published."""
