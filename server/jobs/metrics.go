package jobs

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/roadsign/roadsign/server"
)

var jobsDesc = prometheus.NewDesc("roadsign_jobs",
	"Jobs (dealer, auto-assign and campaign installs) by state, counted in the database at each scrape.",
	[]string{"state"}, nil)

// allStates are the states reported, zero or not, so a dashboard's
// series exist before the first job reaches them.
var allStates = []string{server.JobQueued, server.JobInProgress, server.JobSucceeded, server.JobFailed,
	server.JobRolledBack, server.JobCanceled, server.JobTimedOut}

// Collector reports jobs by state on /metrics: one grouped count per
// scrape, shared by all replicas' views of the database.
func (s *Service) Collector() prometheus.Collector { return jobCollector{s} }

type jobCollector struct{ s *Service }

func (c jobCollector) Describe(ch chan<- *prometheus.Desc) { ch <- jobsDesc }

func (c jobCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	counts, err := c.s.store.JobStates(ctx)
	if err != nil {
		// A scrape without the series beats failing every other metric.
		c.s.log.Warn("count jobs by state for /metrics", "err", err)
		return
	}
	for _, st := range allStates {
		ch <- prometheus.MustNewConstMetric(jobsDesc, prometheus.GaugeValue, float64(counts[st]), st)
	}
}
