"""fleet: the operator's view of the fleet, read from the hosts' reports in etcd.

``source`` reads the reports and lock semaphores (``channels.etcd``, ``channels.fleet``) into
one snapshot; ``table`` prints it (``tidehost fleet status``); ``serve`` serves a live page
(``tidehost fleet serve``, ``page.html``); ``watch`` pauses a release in the channel when the
reports cross the halt line (``tidehost fleet watch``).
"""
