"""Lab 10 variant (correct, shaped unlike the reference): one LangGraph thread per question and one
Temporal workflow per question, the pod's loop asking the store before it starts each one."""
