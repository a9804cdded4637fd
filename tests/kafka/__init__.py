"""A real Apache Kafka (KRaft) broker for the test suites: ``make kafka`` fetches it with Maven
(``kafka_local/pom.xml``), ``kafka_local/broker.py`` runs it."""
