// Fast checks of what the viewer shows about who drives the browser
// (web/static/handover.js), run in Node: one CONTROL state and role at a time.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { controlView } from '../web/static/handover.js';

describe('controlView', () => {
  test('an agent drives: the person is told their input is paused and may take control', () => {
    const v = controlView({ holder: 'agent', since: '2026-01-01T00:00:00Z' }, 'interactive');
    assert.equal(v.visible, true);
    assert.equal(v.text, 'An agent is driving; your input is paused');
    assert.deepEqual([v.take, v.release, v.inputPaused, v.reason], [true, false, true, '']);
  });

  test('the agent asks for a person: the reason is shown with "Take control"', () => {
    const v = controlView({ holder: 'agent', reason: '  Please solve the captcha ' }, 'interactive');
    assert.equal(v.reason, 'Please solve the captcha');
    assert.equal(v.take, true);
    assert.match(v.text, /asks for a person/);
  });

  test('the person holds control: "Hand back to the agent"', () => {
    const v = controlView({ holder: 'person', agents: 1 }, 'interactive');
    assert.deepEqual([v.visible, v.take, v.release, v.inputPaused], [true, false, true, false]);
    assert.equal(v.text, 'You have control; the agent waits');
    // No agent connected any more: nobody to hand back to.
    assert.equal(controlView({ holder: 'person', agents: 0 }, 'interactive').release, false);
  });

  test('no agent: nothing to show, input as usual', () => {
    for (const state of [null, { holder: 'none' }, { holder: 'bogus' }]) {
      const v = controlView(state, 'interactive');
      assert.deepEqual([v.visible, v.take, v.release, v.inputPaused, v.holder], [false, false, false, false, 'none'], JSON.stringify(state));
    }
  });

  test('view-only and agent connections see the state but get no buttons', () => {
    for (const role of ['view', 'agent']) {
      const agent = controlView({ holder: 'agent', reason: 'help' }, role);
      assert.deepEqual([agent.visible, agent.take, agent.release, agent.inputPaused, agent.reason], [true, false, false, false, 'help'], role);
      assert.equal(controlView({ holder: 'agent' }, role).text, 'An agent is driving');
      const person = controlView({ holder: 'person' }, role);
      assert.deepEqual([person.visible, person.take, person.release], [true, false, false], role);
      assert.equal(person.text, 'A person has control; the agent waits');
    }
  });
});
