"""What the server and the clients both need: data, partitions, models, training, config."""
