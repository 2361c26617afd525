"""Lab 05 variant swallow_cancel: extract_content shields the download from cancellation and finishes it anyway."""
