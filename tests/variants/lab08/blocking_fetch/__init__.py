"""Lab 08 variant blocking_fetch: fetch_page downloads with a sync httpx.Client inside an async step."""
