"""Dynamic batching: merge concurrent requests for one model into fewer, larger engine runs.

`scheduler` decides when queued requests leave and on which execution slot
(queue, deadlines, dispatch); `inputs` says what a request carries and how a
batch is merged, run and split back; `queued` is one request in the queue.
"""
