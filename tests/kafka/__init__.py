"""A real Apache Kafka (KRaft) broker for the test suites: ``make kafka`` fetches it with Maven
(``tests/kafka/pom.xml``), ``tests/kafka/broker.py`` runs it."""
