"""The serving engine's inner parts, independent of any web framework.

Among them: ``batcher`` coalesces concurrent requests to one version into batched model
calls, ``shadow`` mirrors served traffic to shadow versions off the response path,
``metrics`` holds the Prometheus collectors, ``figures`` keeps operational figures as time
series in the metadata store, ``leases`` elects the one worker that runs a periodic job,
and ``threads`` keeps native thread pools from oversubscribing the cores.
"""
