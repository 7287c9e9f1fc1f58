// Command promql-names parses PromQL with Prometheus's own parser, for the tests that
// check alert rules and the Grafana dashboard against the metrics the operator exports.
//
// Input (stdin, JSON): {"exprs": ["<PromQL>", ...], "series": ["<promtool series>", ...]}.
// Output (stdout, JSON): {"exprs": [{"names": [...], "matchers": {name: [label, ...]},
// "grouping": [...], "error": "..."}], "series": [{"labels": {...}, "error": "..."}]},
// one entry per input, in order: the metric names each expression selects, the label
// names each selector of that metric matches on, the label names used by by/without and
// on/ignoring/group_left/group_right; and the labels (with __name__) of each series
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
	Names    []string            `json:"names"`
	Matchers map[string][]string `json:"matchers"`
	Grouping []string            `json:"grouping"`
	Error    string              `json:"error,omitempty"`
}

type seriesResult struct {
	Labels map[string]string `json:"labels"`
	Error  string            `json:"error,omitempty"`
}

type response struct {
	Exprs  []exprResult   `json:"exprs"`
	Series []seriesResult `json:"series"`
}

func sorted(set map[string]bool) []string {
	out := make([]string, 0, len(set))
	for item := range set {
		out = append(out, item)
	}
	sort.Strings(out)
	return out
}

// inspect lists what a parsed expression uses: metric names (selector names and
// equality matchers on __name__), the labels matched per metric, and grouping labels.
func inspect(expr parser.Expr) exprResult {
	names := map[string]bool{}
	matched := map[string]map[string]bool{}
	grouping := map[string]bool{}
	parser.Inspect(expr, func(node parser.Node, _ []parser.Node) error {
		switch n := node.(type) {
		case *parser.VectorSelector:
			name := n.Name
			for _, m := range n.LabelMatchers {
				if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
					name = m.Value
				}
			}
			if name == "" {
				return nil
			}
			names[name] = true
			if matched[name] == nil {
				matched[name] = map[string]bool{}
			}
			for _, m := range n.LabelMatchers {
				if m.Name != labels.MetricName {
					matched[name][m.Name] = true
				}
			}
		case *parser.AggregateExpr:
			for _, l := range n.Grouping {
				grouping[l] = true
			}
		case *parser.BinaryExpr:
			if n.VectorMatching != nil {
				for _, l := range n.VectorMatching.MatchingLabels {
					grouping[l] = true
				}
				for _, l := range n.VectorMatching.Include {
					grouping[l] = true
				}
			}
		}
		return nil
	})
	result := exprResult{Names: sorted(names), Matchers: map[string][]string{}, Grouping: sorted(grouping)}
	for name, set := range matched {
		result.Matchers[name] = sorted(set)
	}
	return result
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
			resp.Exprs = append(resp.Exprs, exprResult{
				Names: []string{}, Matchers: map[string][]string{}, Grouping: []string{}, Error: err.Error(),
			})
			continue
		}
		resp.Exprs = append(resp.Exprs, inspect(expr))
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
