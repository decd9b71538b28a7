"""The mesh: one traffic policy rendered into Envoy configs and Istio manifests, plus the dev CA."""
