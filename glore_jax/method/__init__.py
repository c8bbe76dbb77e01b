"""GLoRe's model-free method logic: SORM/ORM labels, refiner training data, evaluation arithmetic."""
