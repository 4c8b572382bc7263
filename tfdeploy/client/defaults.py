"""The client's default deadlines and retry budget, importable without the client itself
(the CLI shows them in ``--help`` without loading gRPC or protobuf)."""

#: Seconds one attempt may take at one endpoint.
DEFAULT_TIMEOUT = 60.0
#: Retries of one call, and the seconds they may take: enough to outlast a server
#: restart (a model server takes seconds to come back and load; 10 s is common for ours).
DEFAULT_RETRIES = 10
DEFAULT_RETRY_TIMEOUT = 30.0
