"""The Kafka runtime: the consume loop, in-flight tracking, commits, publishing, health."""
