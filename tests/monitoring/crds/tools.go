//go:build tools

// Package tools records what build.sh uses so `go mod tidy` keeps its dependencies:
// controller-gen, and the Prometheus Operator API types it generates the CRDs from.
package tools

import (
	_ "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	_ "sigs.k8s.io/controller-tools/cmd/controller-gen"
)
