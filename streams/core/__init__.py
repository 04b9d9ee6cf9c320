"""Pure domain logic: numbering, plans, rating, counters and rules. Never imports faust or aiokafka."""
