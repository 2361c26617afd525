"""Lab 05 known-bad variant cost_from_chars: the summary priced by counting characters instead of reading response.usage."""
