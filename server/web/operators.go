package web

import (
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/accounts"
	"github.com/roadsign/roadsign/server/approvals"
	"github.com/roadsign/roadsign/server/webhooks"
)

type approvalsPage struct {
	page
	Pending, Decided []approvals.View
	// Approver: the viewer may decide (holds the approver role).
	Approver bool
	Me       string
}

// approvalsPage lists the requests waiting for a second person and the
// latest decisions; an approver approves or refuses with a reason.
func (w *Web) approvalsPage(c *gin.Context) {
	s, ok := w.session(c)
	if !ok || !hasRole(s, staff) {
		w.loginPage(c, "Dealer console", "/dealer/login", true)
		return
	}
	ctx := c.Request.Context()
	p := approvalsPage{page: w.base(c, s, "Approvals"), Approver: s.Is(server.RoleApprover), Me: s.Name}
	var err error
	if p.Pending, err = w.Approvals.List(ctx, 100, server.ApprovalPending); err != nil {
		p.Error = message(err)
	}
	if p.Decided, err = w.Approvals.List(ctx, 50, server.ApprovalApproved, server.ApprovalRefused, server.ApprovalVoided, server.ApprovalUsed); err != nil {
		p.Error = message(err)
	}
	w.render(c, http.StatusOK, "approvals", p)
}

// decide is an approver's approve or refuse.
func (w *Web) decide(c *gin.Context) {
	s, ok := w.form(c, server.RoleApprover)
	if !ok {
		return
	}
	v, err := w.Campaigns.Decide(c.Request.Context(), s.principal(), c.Param("id"), c.PostForm("action") == "approve", c.PostForm("reason"))
	if err != nil {
		w.redirect(c, "/dealer/approvals", "", "err", message(err))
		return
	}
	w.redirect(c, "/dealer/approvals", "", "msg", "Request "+v.ID+" "+v.State+".")
}

type tokensPage struct {
	page
	Tokens []accounts.TokenView
}

// tokensPage lists the viewer's API tokens (an admin's: everyone's).
func (w *Web) tokensPage(c *gin.Context) {
	s, ok := w.session(c)
	if !ok || !hasRole(s, staff) {
		w.loginPage(c, "Dealer console", "/dealer/login", true)
		return
	}
	p := tokensPage{page: w.base(c, s, "API tokens")}
	var err error
	if p.Tokens, err = w.Accounts.Tokens(c.Request.Context(), s.principal()); err != nil {
		p.Error = message(err)
	}
	w.render(c, http.StatusOK, "tokens", p)
}

// revokeToken revokes one of the viewer's API tokens.
func (w *Web) revokeToken(c *gin.Context) {
	s, ok := w.form(c, server.RoleAdmin, server.RoleReleaseManager, server.RoleApprover, server.RoleDealer)
	if !ok {
		return
	}
	if _, err := w.Accounts.RevokeToken(c.Request.Context(), s.principal(), c.Param("id")); err != nil {
		w.redirect(c, "/dealer/tokens", "", "err", message(err))
		return
	}
	w.redirect(c, "/dealer/tokens", "", "msg", "Token revoked: it stops working at once.")
}

type webhooksPage struct {
	page
	Webhooks []webhooks.View
}

// webhooksPage shows the subscriptions and their delivery log.
func (w *Web) webhooksPage(c *gin.Context) {
	s, ok := w.session(c)
	if !ok || !hasRole(s, []server.Role{server.RoleAdmin, server.RoleSupport}) {
		w.loginPage(c, "Dealer console", "/dealer/login", true)
		return
	}
	p := webhooksPage{page: w.base(c, s, "Webhooks")}
	var err error
	if p.Webhooks, err = w.Webhooks.List(c.Request.Context(), 50); err != nil {
		p.Error = message(err)
	}
	w.render(c, http.StatusOK, "webhooks", p)
}
