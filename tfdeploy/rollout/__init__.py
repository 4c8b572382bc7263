"""Rolling a new model version out on a running server: ``promote`` and ``rollback``.

Above the peers (like ``runtime/`` and ``deploy/``): it uses the client to ask both
versions for masks, ``client.compare`` to judge them, and the state dir of ``runtime/``
to find the server's model config and to remember where a label pointed before.
"""
