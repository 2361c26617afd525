"""Lab 08 variant side_effect_outside_step: the search is called in the function body, not in a step."""
