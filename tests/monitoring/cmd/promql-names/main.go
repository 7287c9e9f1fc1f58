// Command promql-names parses PromQL with Prometheus's own parser, for the tests that
// check alert rules and the Grafana dashboard against the metrics the operator exports.
//
// Input (stdin, JSON): {"exprs": ["<PromQL>", ...], "series": ["<promtool series>", ...]}.
// Output (stdout, JSON): {"exprs": [{"names": [...], "error": "..."}],
// "series": [{"labels": {...}, "error": "..."}]}, one entry per input, in order: the
// metric names each expression selects, and the labels (with __name__) of each series
// descriptor as written in a promtool unit test's input_series.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

type request struct {
	Exprs  []string `json:"exprs"`
	Series []string `json:"series"`
}

type exprResult struct {
	Names []string `json:"names"`
	Error string   `json:"error,omitempty"`
}

type seriesResult struct {
	Labels map[string]string `json:"labels"`
	Error  string            `json:"error,omitempty"`
}

type response struct {
	Exprs  []exprResult   `json:"exprs"`
	Series []seriesResult `json:"series"`
}

// names returns every metric name a parsed expression selects: selector names and
// equality matchers on __name__.
func names(expr parser.Expr) []string {
	seen := map[string]bool{}
	parser.Inspect(expr, func(node parser.Node, _ []parser.Node) error {
		if vs, ok := node.(*parser.VectorSelector); ok {
			if vs.Name != "" {
				seen[vs.Name] = true
			}
			for _, m := range vs.LabelMatchers {
				if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
					seen[m.Value] = true
				}
			}
		}
		return nil
	})
	out := make([]string, 0, len(seen))
	for name := range seen {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

func main() {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		fmt.Fprintln(os.Stderr, "promql-names: reading the request:", err)
		os.Exit(2)
	}
	p := parser.NewParser(parser.Options{})
	resp := response{Exprs: []exprResult{}, Series: []seriesResult{}}
	for _, input := range req.Exprs {
		expr, err := p.ParseExpr(input)
		if err != nil {
			resp.Exprs = append(resp.Exprs, exprResult{Names: []string{}, Error: err.Error()})
			continue
		}
		resp.Exprs = append(resp.Exprs, exprResult{Names: names(expr)})
	}
	for _, input := range req.Series {
		lset, _, err := p.ParseSeriesDesc(input)
		if err != nil {
			resp.Series = append(resp.Series, seriesResult{Labels: map[string]string{}, Error: err.Error()})
			continue
		}
		resp.Series = append(resp.Series, seriesResult{Labels: lset.Map()})
	}
	if err := json.NewEncoder(os.Stdout).Encode(resp); err != nil {
		fmt.Fprintln(os.Stderr, "promql-names:", err)
		os.Exit(2)
	}
}
