package web

import (
	"fmt"
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/approvals"
	"github.com/roadsign/roadsign/server/campaigns"
)

// bar is one wave's stacked bar in the progress chart: segments of the
// wave's targeted vehicles, in SVG user units out of chartWidth.
type bar struct {
	Label    string
	Y        int
	Segments []segment
}

type segment struct {
	X, Width float64
	Class    string // the CSS class (and legend) of a state
	Count    int
	Title    string
}

const (
	chartWidth = 600.0
	barHeight  = 22
	barGap     = 12
)

// waveState is a wave's state as people read it: a halted or aborted
// campaign's open wave stopped, its pending ones never opened (the API
// keeps pending, open, done).
func waveState(campaign, wave string) string {
	if campaign != server.CampaignHalted && campaign != server.CampaignAborted {
		return wave
	}
	switch wave {
	case "open":
		return "stopped: the campaign " + campaign
	case "pending":
		return "never opened"
	}
	return wave
}

// chart lays out a campaign's waves as stacked bars, each as wide as the
// share of the campaign's vehicles it adds and starting where the waves
// before it end, so the bars together span the whole campaign.
func chart(v campaigns.View) ([]bar, int) {
	var bars []bar
	total := max(v.Selected, 1)
	before := 0
	for i, w := range v.Waves {
		b := bar{Label: fmt.Sprintf("Wave %d · %d%% · %s", i+1, w.Percent, waveState(v.State, w.State)), Y: i * (barHeight + barGap)}
		x := chartWidth * float64(before) / float64(total)
		before += w.Targeted
		for _, s := range []struct {
			class string
			n     int
		}{{"succeeded", w.Succeeded}, {"failed", w.Failed + w.RolledBack + w.TimedOut}, {"active", w.Queued + w.InProgress},
			{"waiting", w.Waiting}, {"declined", w.Declined + w.Canceled}} {
			if s.n == 0 {
				continue
			}
			width := chartWidth * float64(s.n) / float64(total)
			b.Segments = append(b.Segments, segment{X: x, Width: width, Class: s.class, Count: s.n, Title: fmt.Sprintf("%d %s", s.n, s.class)})
			x += width
		}
		bars = append(bars, b)
	}
	return bars, len(v.Waves)*(barHeight+barGap) + barGap
}

type campaignPage struct {
	page
	Campaigns []campaigns.View
	Campaign  *campaigns.View
	Bars      []bar
	Height    int
	Admin     bool
	Actions   []string
	// Failures are the campaign's failed installs, newest first.
	Failures []campaigns.Failure
	// Approvals are the campaign's approval requests and decisions,
	// newest first.
	Approvals []approvals.View
}

// failuresShown is how many failed installs a campaign page lists.
const failuresShown = 50

// campaignActions are what an admin may do to a campaign in its state.
func campaignActions(state string) []string {
	switch state {
	case server.CampaignDraft:
		return []string{"start", "abort"}
	case server.CampaignRunning:
		return []string{"pause", "abort"}
	case server.CampaignPaused:
		return []string{"resume", "abort"}
	case server.CampaignHalted:
		return []string{"abort"}
	}
	return nil
}

func (w *Web) campaignsPage(c *gin.Context) {
	s, ok := w.session(c)
	if !ok || !hasRole(s, staff) {
		w.loginPage(c, "Dealer console", "/dealer/login", true)
		return
	}
	p := campaignPage{page: w.base(c, s, "Campaigns"), Admin: s.Roles.Any(server.RoleAdmin, server.RoleReleaseManager)}
	list, err := w.Campaigns.List(c.Request.Context())
	if err != nil {
		p.Error = message(err)
	}
	p.Campaigns = list
	w.render(c, http.StatusOK, "campaigns", p)
}

func (w *Web) campaignPage(c *gin.Context) {
	s, ok := w.session(c)
	if !ok || !hasRole(s, staff) {
		w.loginPage(c, "Dealer console", "/dealer/login", true)
		return
	}
	v, err := w.Campaigns.Get(c.Request.Context(), c.Param("id"))
	if err != nil {
		w.redirect(c, "/dealer/campaigns", "", "err", message(err))
		return
	}
	p := campaignPage{page: w.base(c, s, "Campaign "+v.Name), Campaign: &v, Admin: s.Roles.Any(server.RoleAdmin, server.RoleReleaseManager), Actions: campaignActions(v.State)}
	p.Bars, p.Height = chart(v)
	if p.Failures, err = w.Campaigns.Failures(c.Request.Context(), v.ID, failuresShown); err != nil {
		w.Log.Warn("campaign failures", "campaign", v.ID, "err", err)
	}
	if p.Approvals, err = w.Approvals.Of(c.Request.Context(), v.ID); err != nil {
		w.Log.Warn("campaign approvals", "campaign", v.ID, "err", err)
	}
	w.render(c, http.StatusOK, "campaign", p)
}

// campaignAction is an admin's start, pause, resume or abort.
func (w *Web) campaignAction(c *gin.Context) {
	s, ok := w.form(c, server.RoleAdmin, server.RoleReleaseManager)
	if !ok {
		return
	}
	ctx, id, action := c.Request.Context(), c.Param("id"), c.PostForm("action")
	var err error
	if action == "start" {
		_, err = w.Campaigns.Start(ctx, s.principal(), id)
	} else {
		_, err = w.Campaigns.Act(ctx, s.principal(), id, action)
	}
	back := "/dealer/campaigns/" + id
	if err != nil {
		w.redirect(c, back, "", "err", message(err))
		return
	}
	w.redirect(c, back, "", "msg", "Campaign "+action+" done.")
}

// consent records an owner's answer to a campaign's update.
func (w *Web) consent(c *gin.Context) {
	s, ok := w.form(c, server.RoleOwner)
	if !ok {
		return
	}
	ctx, vin, decision := c.Request.Context(), c.PostForm("vin"), c.PostForm("decision")
	if owns, err := w.Owners.Owns(ctx, s.principal(), vin); err != nil || !owns {
		w.redirect(c, "/", "", "err", "That vehicle is not linked to your account.")
		return
	}
	if err := w.Campaigns.Consent(ctx, s.principal(), vin, c.PostForm("campaign"), decision); err != nil {
		w.redirect(c, "/", "", "err", message(err))
		return
	}
	msg := "Thanks: the update installs when your car next checks in."
	if decision == "decline" {
		msg = "Declined: your car stays on its current software."
	}
	w.redirect(c, "/", "", "msg", msg)
}
