//go:build tools

// Package tools records the command built from this module so `go mod tidy`
// keeps its dependencies.
package tools

import (
	_ "github.com/ory/hydra/v2"
)
