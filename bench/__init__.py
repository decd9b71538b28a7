"""`make bench`: what each part of the mesh costs, measured with real gRPC traffic on loopback."""
