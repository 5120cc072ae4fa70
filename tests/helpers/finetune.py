"""What the fine-tuning tests share besides fixtures: the sample-task families they train on."""

# Three of the sample task's seven families: enough classes for macro-F1, few enough for a fast test.
FAMILIES = ("asyncio", "email", "xml")
