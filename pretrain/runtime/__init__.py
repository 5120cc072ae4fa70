"""What a training process runs on: device and process-group set-up, our collectives, the DeepSpeed
engine, health checks, signals and fault injection."""
