"""Lab 11 variant good_model_chain: correct, shaped unlike the reference: the models are a list tried in turn,
the quality check runs beside the store, activities turn model errors into typed ApplicationErrors."""
