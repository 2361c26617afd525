"""Lab 08 variant uuid_step_ids: page step ids from uuid4: a different id on every call of the body."""
