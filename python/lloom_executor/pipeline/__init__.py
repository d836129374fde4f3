"""The request pipeline, one small module per concern.

Admission components (each standalone, configured from its `[section]`, with an
injectable clock so tests never sleep):

* `ratelimits`     - `[[rate_limiting.rules]]` over the Cython token buckets.
* `replay`         - refuses a signing digest already seen (bounded store,
                     `ReplayStore` interface for a shared store later).
* `pricing`        - our current price per model (fixed / dynamic / market),
                     the offered-price check and the high-priority test.
* `content_filter` - `[content_filter]` length limit and block patterns.

Nothing is imported here, so loading one component does not load the others.
"""
