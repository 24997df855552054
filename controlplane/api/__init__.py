"""The gRPC edge: servicers, conversion to and from protobuf, status mapping, auth."""
