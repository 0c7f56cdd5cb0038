"""Task adapters (dataset, collator, model class, loss): llm now, vlm and asr plug in beside it."""
