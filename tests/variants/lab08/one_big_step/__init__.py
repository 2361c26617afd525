"""Lab 08 variant one_big_step: the page downloads (gathered) and the LLM call in one step."""
