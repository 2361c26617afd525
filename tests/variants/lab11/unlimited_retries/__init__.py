"""Lab 11 variant unlimited_retries: the primary's retry policy has no maximum_attempts: a model that stays down is retried for ever."""
