"""Lab 10 variant: the LangGraph thread id carries the pod's pid (BUG(per_process_thread_id))."""
