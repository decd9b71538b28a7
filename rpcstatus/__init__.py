"""AIP-193 statuses (google.rpc.Status with typed details), below both interceptors/ and runtime/."""
