"""hookkit evaluation tasks: POPE, CHAIR, passkey, needle-in-a-haystack, long-context perplexity."""
