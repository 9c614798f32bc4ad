package httpapi

import (
	"context"
	"net/http"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/roadsign/roadsign/server"
	"github.com/roadsign/roadsign/server/approvals"
	"github.com/roadsign/roadsign/server/campaigns"
	"github.com/roadsign/roadsign/server/webhooks"
)

func (a *api) changeCampaign(c *gin.Context) {
	var req campaigns.ChangeRequest
	if err := decodeJSON(c, &req); err != nil {
		a.fail(c, err)
		return
	}
	p, _ := principal(c)
	v, err := a.Campaigns.Change(c.Request.Context(), p, c.Param("id"), req)
	if err != nil {
		a.fail(c, err)
		return
	}
	c.JSON(http.StatusOK, v)
}

// create is a handler that decodes a Req, has fn make something of it for
// the caller, and answers 201 with what it made.
func create[Req, Out any](a *api, fn func(context.Context, server.Principal, Req) (Out, error)) gin.HandlerFunc {
	return func(c *gin.Context) {
		var req Req
		if err := decodeJSON(c, &req); err != nil {
			a.fail(c, err)
			return
		}
		p, _ := principal(c)
		out, err := fn(c.Request.Context(), p, req)
		if err != nil {
			a.fail(c, err)
			return
		}
		c.JSON(http.StatusCreated, out)
	}
}

// RefuseRequest is the body of a refusal.
type RefuseRequest struct {
	Reason string `json:"reason"`
}

// decision reads a refusal's reason (an approval has no body).
func decision(c *gin.Context, approve bool) (string, error) {
	if approve || c.Request.ContentLength == 0 {
		return "", nil
	}
	var req RefuseRequest
	if err := decodeJSON(c, &req); err != nil {
		return "", err
	}
	return req.Reason, nil
}

// decideCampaign approves or refuses the campaign's pending request
// (start, or raised waves); decideApproval any request by its ID.
func (a *api) decideCampaign(approve bool) gin.HandlerFunc {
	return a.decide(approve, a.Campaigns.DecidePending)
}

func (a *api) decideApproval(approve bool) gin.HandlerFunc {
	return a.decide(approve, a.Campaigns.Decide)
}

func (a *api) decide(approve bool, fn func(context.Context, server.Principal, string, bool, string) (approvals.View, error)) gin.HandlerFunc {
	return func(c *gin.Context) {
		reason, err := decision(c, approve)
		if err != nil {
			a.fail(c, err)
			return
		}
		p, _ := principal(c)
		v, err := fn(c.Request.Context(), p, c.Param("id"), approve, reason)
		if err != nil {
			a.fail(c, err)
			return
		}
		c.JSON(http.StatusOK, v)
	}
}

func (a *api) listApprovals(c *gin.Context) {
	var states []string
	if st := c.Query("state"); st != "" {
		states = strings.Split(st, ",")
	}
	vs, err := a.Approvals.List(c.Request.Context(), 200, states...)
	if err != nil {
		a.fail(c, err)
		return
	}
	c.JSON(http.StatusOK, gin.H{"approvals": vs})
}

func (a *api) listTokens(c *gin.Context) {
	p, _ := principal(c)
	ts, err := a.Accounts.Tokens(c.Request.Context(), p)
	if err != nil {
		a.fail(c, err)
		return
	}
	c.JSON(http.StatusOK, gin.H{"tokens": ts})
}

func (a *api) revokeToken(c *gin.Context) {
	p, _ := principal(c)
	t, err := a.Accounts.RevokeToken(c.Request.Context(), p, c.Param("id"))
	if err != nil {
		a.fail(c, err)
		return
	}
	c.JSON(http.StatusOK, t)
}

func (a *api) listWebhooks(c *gin.Context) {
	ws, err := a.Webhooks.List(c.Request.Context(), 50)
	if err != nil {
		a.fail(c, err)
		return
	}
	c.JSON(http.StatusOK, gin.H{"webhooks": ws, "events": webhooks.Events})
}

func (a *api) deleteWebhook(c *gin.Context) {
	p, _ := principal(c)
	if err := a.Webhooks.Delete(c.Request.Context(), p, c.Param("id")); err != nil {
		a.fail(c, err)
		return
	}
	c.Status(http.StatusNoContent)
}
