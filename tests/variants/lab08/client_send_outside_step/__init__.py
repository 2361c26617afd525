"""Lab 08 variant client_send_outside_step: the completion event sent with inngest_client.send in the body, not ctx.step.send_event."""
