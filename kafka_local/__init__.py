"""A local Apache Kafka (KRaft) for the tests, the fault suite and the benchmark: single
nodes and small clusters started from the jars ``make kafka`` fetches (``pom.xml``), with
the faults they need (kill, restart, pause) and, in ``security``, TLS, SCRAM and ACLs."""
